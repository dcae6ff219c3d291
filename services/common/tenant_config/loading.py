"""Parsing documents: pydantic's errors turned into issues an operator can act on, and YAML files
holding several documents, read all or nothing."""

from __future__ import annotations

import difflib
import json
import re
import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from services.common.tenant_config.model import TenantConfig
from services.common.tenant_config.validation import ConfigIssue, IssuePath, config_warnings, semantic_issues

# ---------------------------------------------------------------------------------------------
# Turning pydantic errors into issues an operator can act on

# Key names under which a value may be a secret: their values are never echoed back.
_SECRET_KEYS = frozenset({"clientSecret", "password", "securityToken", "secretRef"})
_MAX_ECHO = 60


class ConfigInvalidError(ValueError):
    """A document failed validation; ``issues`` lists every problem found."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues = tuple(issues)
        super().__init__("; ".join(f"{i.where}: {i.message}" if i.path else i.message for i in issues))


def parse_tenant_config(data: object) -> TenantConfig:
    """Validate one document (a parsed mapping) fully; raises :class:`ConfigInvalidError`."""
    try:
        config = TenantConfig.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        # A container whose items failed is also reported as too short; the item errors say it better.
        locs = [tuple(e["loc"]) for e in errors]
        specific = [
            e for e in errors if not any(len(o) > len(e["loc"]) and o[: len(e["loc"])] == e["loc"] for o in locs)
        ]
        raise ConfigInvalidError([_issue_from_error(e) for e in specific]) from None
    issues = semantic_issues(config)
    if issues:
        raise ConfigInvalidError(issues)
    return config


def _issue_from_error(error: ErrorDetails) -> ConfigIssue:
    loc = tuple(error["loc"])
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return ConfigIssue(loc, "required")
    if kind == "extra_forbidden":
        # Never echo the value: an unknown key is often a misspelt secret key.
        return ConfigIssue(loc, _unknown_key_message(loc))
    if kind in ("enum", "literal_error"):
        allowed = ", ".join(re.findall(r"'([^']*)'", str(ctx.get("expected", ""))))
        message = f"must be one of {allowed}"
    elif kind == "model_type" or kind == "model_attributes_type" or kind == "dict_type":
        message = "must be a mapping"
    elif kind in ("tuple_type", "list_type"):
        message = "must be a list"
    elif kind in ("bool_type", "bool_parsing"):
        message = "must be true or false"
    elif kind in ("int_type", "int_parsing", "int_from_float"):
        message = "must be a whole number"
    elif kind in ("float_type", "float_parsing"):
        message = "must be a number"
    elif kind == "string_type":
        message = "must be text"
    else:
        message = error["msg"]
        for prefix, replacement in (
            ("Value error, ", ""),
            ("Input should be", "must be"),
            ("String should", "must"),
            ("Tuple should", "must"),
            ("Dictionary should", "must"),
        ):
            if message.startswith(prefix):
                message = replacement + message[len(prefix) :]
    echo = _echo(error["input"], loc, kind)
    return ConfigIssue(loc, f"{message} (got {echo})" if echo else message)


def _echo(value: object, loc: IssuePath, kind: str) -> str | None:
    if kind == "inline_secret" or any(part in _SECRET_KEYS for part in loc):
        return None
    if value is None or isinstance(value, bool | int | float):
        return "null" if value is None else json.dumps(value)
    if isinstance(value, str):
        shown = value if len(value) <= _MAX_ECHO else value[:_MAX_ECHO] + "..."
        return repr(shown)
    return None


def _unknown_key_message(loc: IssuePath) -> str:
    model = _model_at(loc[:-1])
    if model is None:
        return "unknown field"
    allowed = sorted(_aliases(model))
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"unknown field ({hint}allowed: {', '.join(allowed)})"


def _aliases(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _model_at(loc: IssuePath) -> type[BaseModel] | None:
    """The model class that validates the mapping at ``loc`` (to list its allowed keys), if any."""
    current: Any = TenantConfig
    for part in loc:
        current = _unwrap(current)
        if isinstance(part, int):
            if get_origin(current) not in (tuple, list):
                return None
            current = get_args(current)[0]
            continue
        if isinstance(current, type) and issubclass(current, BaseModel):
            by_alias = {info.alias or name: info.annotation for name, info in current.model_fields.items()}
            if part not in by_alias:
                return None
            current = by_alias[part]
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            annotation = models[0] if models else args[0]
        else:
            return annotation


# ---------------------------------------------------------------------------------------------
# Files: YAML with several documents


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1 surprises: duplicate keys are errors, only true/false are
    booleans (a country code NO stays a string) and dates stay strings."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_StrictLoader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


@dataclass(frozen=True)
class LoadedDocument:
    source: str
    index: int  # 1-based among the source's non-empty documents
    config: TenantConfig
    # ``name: [document N: ]path: message`` lines for what is valid but worth a look (config_warnings).
    warnings: tuple[str, ...] = ()


class YamlDocumentsError(ValueError):
    """The text is not YAML the tenant loader accepts; the message says where and why."""


def load_yaml_documents(text: str) -> list[Any]:
    """The non-empty documents of ``text``, read with the strict loader the CLI and the API share."""
    try:
        return [d for d in yaml.load_all(text, Loader=_StrictLoader) if d is not None]
    except yaml.YAMLError as exc:
        raise YamlDocumentsError(_yaml_message(exc)) from None


class ConfigFileError(ValueError):
    """One or more sources are invalid; ``problems`` holds one formatted line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(problems))


def parse_config_sources(sources: Iterable[tuple[str, str]]) -> list[LoadedDocument]:
    """Parse and validate ``(name, text)`` sources. All or nothing: any problem raises
    :class:`ConfigFileError` listing every problem as ``name: [document N: ]path: message``."""
    problems: list[str] = []
    loaded: list[LoadedDocument] = []
    for source, text in sources:
        try:
            documents = load_yaml_documents(text)
        except YamlDocumentsError as exc:
            problems.append(f"{source}: {exc}")
            continue
        if not documents:
            problems.append(f"{source}: no documents")
        for index, document in enumerate(documents, start=1):
            prefix = f"{source}: document {index}: " if len(documents) > 1 else f"{source}: "
            if not isinstance(document, dict):
                problems.append(f"{prefix}must be a mapping with apiVersion, kind, metadata and spec")
                continue
            try:
                config = parse_tenant_config(document)
            except ConfigInvalidError as exc:
                problems += [_located(prefix, i) for i in exc.issues]
                continue
            warnings = tuple(_located(prefix, w) for w in config_warnings(config))
            loaded.append(LoadedDocument(source, index, config, warnings))
    problems += _duplicate_tenants(loaded)
    if problems:
        raise ConfigFileError(problems)
    return loaded


def _located(prefix: str, issue: ConfigIssue) -> str:
    return f"{prefix}{issue.where}: {issue.message}" if issue.path else prefix + issue.message


def parse_config_file(source: str, text: str) -> list[TenantConfig]:
    return [d.config for d in parse_config_sources([(source, text)])]


def _yaml_message(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: invalid YAML: {exc.problem}"
    return f"invalid YAML: {exc}"


def _duplicate_tenants(loaded: Sequence[LoadedDocument]) -> list[str]:
    first: dict[str, LoadedDocument] = {}
    problems = []
    for doc in loaded:
        seen = first.setdefault(doc.config.tenant_id, doc)
        if seen is not doc:
            problems.append(
                f"{doc.source}: document {doc.index}: metadata.name: tenant '{doc.config.tenant_id}' is "
                f"defined more than once (also {seen.source} document {seen.index})"
            )
    return problems
