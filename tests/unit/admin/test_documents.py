"""Request bodies to Tenant documents (as the CLI reads files), and the diff of two documents."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.admin.documents import (
    Change,
    InvalidDocumentError,
    MalformedDocumentError,
    diff_documents,
    load_json,
    read_tenant_document,
    unified_diff,
)
from services.common.tenant_config import ConfigFileError, parse_config_sources, to_document

pytestmark = pytest.mark.unit

SAMPLE = (Path(__file__).resolve().parents[3] / "deploy" / "examples" / "tenant-acme.yaml").read_text()


def cli_problems(text: str) -> list[str]:
    """What `duplex config validate` says about ``text`` (its lines, without the file name)."""
    with pytest.raises(ConfigFileError) as raised:
        parse_config_sources([("f", text)])
    return [line.removeprefix("f: ") for line in raised.value.problems]


def test_yaml_and_json_give_the_same_configuration() -> None:
    from_yaml = read_tenant_document(SAMPLE.encode(), as_yaml=True)
    from_json = read_tenant_document(json.dumps(to_document(from_yaml)).encode(), as_yaml=False)
    assert from_json == from_yaml
    assert from_yaml.tenant_id == "acme"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("conflictPolicy: app_wins", "conflictPolicy: app-wins"),
        ("dailyApiCap: 5000", "dailyApiCap: many"),
        ("name: acme\n", "name: Acme_Corp\n"),
        ("kind: Tenant", "kind: Tenant\nextra: 1"),
        ("  sync:\n", "  sync:\n    cdcc: true\n"),
    ],
)
def test_field_errors_read_as_the_cli_says_them(old: str, new: str) -> None:
    text = SAMPLE.replace(old, new, 1)
    with pytest.raises(InvalidDocumentError) as raised:
        read_tenant_document(text.encode(), as_yaml=True)
    assert [f"{i.where}: {i.message}" for i in raised.value.issues] == cli_problems(text)
    assert str(raised.value).startswith("the document has 1 problem")


def test_yaml_as_strict_as_the_cli() -> None:
    for text in ["kind: [Tenant\n", "a: 1\na: 2\n"]:
        with pytest.raises(MalformedDocumentError) as raised:
            read_tenant_document(text.encode(), as_yaml=True)
        assert [str(raised.value)] == cli_problems(text)


@pytest.mark.parametrize(
    ("raw", "as_yaml", "message"),
    [
        (b"", True, "the body must hold exactly one Tenant document (found no document)"),
        (b"a: 1\n---\nb: 2\n", True, "the body must hold exactly one Tenant document (found 2 documents)"),
        (b"- a\n", True, "the document must be a mapping with apiVersion, kind, metadata and spec"),
        (b"[]", False, "the document must be a mapping with apiVersion, kind, metadata and spec"),
    ],
)
def test_not_one_document(raw: bytes, as_yaml: bool, message: str) -> None:
    with pytest.raises(InvalidDocumentError) as raised:
        read_tenant_document(raw, as_yaml=as_yaml)
    assert str(raised.value) == message


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"a": ', "line 1, column 7: invalid JSON: Expecting value"),
        (b'{"a": 1, "a": 2}', "invalid JSON: duplicate key 'a'"),
        (b'{"a": NaN}', "invalid JSON: NaN is not JSON"),
        (b"\xff", "the body is not UTF-8 text"),
    ],
)
def test_strict_json(raw: bytes, message: str) -> None:
    with pytest.raises(MalformedDocumentError) as raised:
        load_json(raw)
    assert str(raised.value) == message


def test_diff_lists_every_changed_leaf_in_document_order() -> None:
    before: dict[str, Any] = {"a": 1, "b": {"c": [1, 2, 3], "d": "x"}, "gone": True, "t": 1}
    after: dict[str, Any] = {"a": 1, "b": {"c": [1, 5], "d": "x", "e": {"f": 1}}, "t": 1.0, "new": [1]}
    assert diff_documents(before, after) == [
        Change("b.c[1]", "changed", 2, 5),
        Change("b.c[2]", "removed", before=3),
        Change("b.e", "added", after={"f": 1}),
        Change("gone", "removed", before=True),
        Change("t", "changed", 1, 1.0),
        Change("new", "added", after=[1]),
    ]
    assert diff_documents(before, before) == []
    assert diff_documents({"a": {"b": 1}}, {"a": [1]}) == [Change("a", "changed", {"b": 1}, [1])]


def test_unified_diff_of_the_yaml() -> None:
    text = unified_diff({"a": 1, "b": 2}, {"a": 1, "b": 3}, "acme v1", "acme v2")
    assert text == "--- acme v1\n+++ acme v2\n@@ -1,2 +1,2 @@\n a: 1\n-b: 2\n+b: 3\n"
    assert unified_diff({"a": 1}, {"a": 1}, "x", "y") == ""
