"""Tenant documents as the API receives and compares them: pure functions, no I/O.

A request body holds exactly one ``Tenant`` document, as YAML or JSON. It is read with the same
strict YAML loader and validated by the same functions as ``duplex config validate``, so a problem
reads the same on the command line and in the API (there, as ``{field, message}``). Both add the
deployment's policy (:mod:`services.common.tenant_config.policy`) through :func:`parse_document`:
the API per body, the CLI through :func:`validate_sources`.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from services.common.tenant_config import (
    ConfigFileError,
    ConfigInvalidError,
    ConfigIssue,
    LoadedDocument,
    TenantConfig,
    parse_config_sources,
    parse_tenant_config,
)

# The CLI's YAML dialect (duplicate keys refused, only true/false are booleans, dates stay text) and
# its wording of YAML errors, so the API and `duplex config validate` say the same.
from services.common.tenant_config.loading import YamlDocumentsError, load_yaml_documents
from services.common.tenant_config.policy import SalesforcePolicy, policy_issues
from services.common.tenant_config.validation import IssuePath, format_path

ChangeKind = Literal["added", "removed", "changed"]
NOT_A_DOCUMENT = "must be a mapping with apiVersion, kind, metadata and spec"


class MalformedDocumentError(ValueError):
    """The body is not YAML or JSON at all (or not UTF-8)."""


class InvalidDocumentError(ValueError):
    """The body parses but is not one valid Tenant document; ``issues`` says where and why."""

    def __init__(self, message: str, issues: Sequence[ConfigIssue] = ()) -> None:
        super().__init__(message)
        self.issues = tuple(issues)


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            msg = f"duplicate key {key!r}"
            raise ValueError(msg)
        seen[key] = value
    return seen


def _reject_constant(name: str) -> Any:
    msg = f"{name} is not JSON"
    raise ValueError(msg)


def load_json(raw: bytes) -> Any:
    """Strict JSON: UTF-8, no duplicate keys, no NaN or Infinity. Raises :class:`MalformedDocumentError`."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedDocumentError("the body is not UTF-8 text") from None
    try:
        return json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        msg = f"line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}"
        raise MalformedDocumentError(msg) from None
    except ValueError as exc:
        raise MalformedDocumentError(f"invalid JSON: {exc}") from None


def _load_yaml(raw: bytes) -> list[Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedDocumentError("the body is not UTF-8 text") from None
    try:
        return load_yaml_documents(text)
    except YamlDocumentsError as exc:
        raise MalformedDocumentError(str(exc)) from None


def parse_document(document: object, policy: SalesforcePolicy) -> TenantConfig:
    """:func:`parse_tenant_config`, then ``policy``: raises :class:`ConfigInvalidError` with every issue.

    What the policy refuses is listed beside the document's cross-field problems, so one answer says
    everything to fix; a document with structural problems has no shape to judge yet and gets those.
    """
    try:
        config = parse_tenant_config(document)
    except ConfigInvalidError as exc:
        raise ConfigInvalidError([*exc.issues, *_refusals(document, policy)]) from None
    refused = policy_issues(config, policy)
    if refused:
        raise ConfigInvalidError(refused)
    return config


def _refusals(document: object, policy: SalesforcePolicy) -> list[ConfigIssue]:
    try:
        # Structure only: the cross-field problems are what the caller is reporting.
        config = TenantConfig.model_validate(document)
    except ValidationError:
        return []
    return policy_issues(config, policy)


def read_tenant_document(raw: bytes, *, as_yaml: bool, policy: SalesforcePolicy) -> TenantConfig:
    """The one valid Tenant document in ``raw`` that ``policy`` allows, or an error saying what is wrong."""
    documents = _load_yaml(raw) if as_yaml else [load_json(raw)]
    if len(documents) != 1:
        found = "no document" if not documents else f"{len(documents)} documents"
        raise InvalidDocumentError(f"the body must hold exactly one Tenant document (found {found})")
    (document,) = documents
    if not isinstance(document, dict):
        raise InvalidDocumentError(f"the document {NOT_A_DOCUMENT}")
    try:
        return parse_document(document, policy)
    except ConfigInvalidError as exc:
        raise _invalid_document(exc.issues) from None


def _invalid_document(issues: Sequence[ConfigIssue]) -> InvalidDocumentError:
    count = len(issues)
    return InvalidDocumentError(f"the document has {count} problem{'s' if count > 1 else ''}; see errors", issues)


def validate_sources(sources: Sequence[tuple[str, str]], policy: SalesforcePolicy) -> list[LoadedDocument]:
    """``duplex config validate``: :func:`parse_config_sources` and ``policy``, with the API's messages.

    All or nothing: any problem raises :class:`ConfigFileError`, one ``name: [document N: ]path:
    message`` line per problem, the policy's after the rest.
    """
    loaded: list[LoadedDocument] = []
    problems: list[str] = []
    try:
        loaded = parse_config_sources(sources)
    except ConfigFileError as exc:
        problems = list(exc.problems)
    for source, text in sources:
        try:
            documents = load_yaml_documents(text)
        except YamlDocumentsError:
            continue  # reported above
        for index, document in enumerate(documents, start=1):
            prefix = f"{source}: document {index}: " if len(documents) > 1 else f"{source}: "
            problems += [f"{prefix}{issue.where}: {issue.message}" for issue in _refusals(document, policy)]
    if problems:
        raise ConfigFileError(problems)
    return loaded


# ---------------------------------------------------------------------------------------------
# Comparing two versions


@dataclass(frozen=True)
class Change:
    """One difference between two documents, at a path as ``duplex config validate`` writes it."""

    path: str
    kind: ChangeKind
    before: Any = None
    after: Any = None


def diff_documents(before: Any, after: Any) -> list[Change]:
    """Every leaf that differs, in document order. Lists are compared position by position."""
    return list(_diff(before, after, ()))


def _diff(before: Any, after: Any, at: IssuePath) -> Iterator[Change]:
    if isinstance(before, dict) and isinstance(after, dict):
        for key in [*before, *(k for k in after if k not in before)]:
            yield from _diff_entry(before, after, key, at)
    elif isinstance(before, list) and isinstance(after, list):
        for index in range(max(len(before), len(after))):
            yield from _diff_entry(before, after, index, at)
    elif before != after or type(before) is not type(after):
        yield Change(format_path(at), "changed", before, after)


def _diff_entry(before: Any, after: Any, key: Any, at: IssuePath) -> Iterator[Change]:
    here = (*at, key)
    has_before = key in before if isinstance(before, dict) else key < len(before)
    has_after = key in after if isinstance(after, dict) else key < len(after)
    if not has_after:
        yield Change(format_path(here), "removed", before=before[key])
    elif not has_before:
        yield Change(format_path(here), "added", after=after[key])
    else:
        yield from _diff(before[key], after[key], here)


def unified_diff(before: Any, after: Any, before_label: str, after_label: str) -> str:
    """A unified diff of the two documents as YAML, the way ``duplex config show`` prints them."""
    lines = difflib.unified_diff(
        yaml.safe_dump(before, sort_keys=False, allow_unicode=True).splitlines(keepends=True),
        yaml.safe_dump(after, sort_keys=False, allow_unicode=True).splitlines(keepends=True),
        fromfile=before_label,
        tofile=after_label,
    )
    return "".join(lines)
