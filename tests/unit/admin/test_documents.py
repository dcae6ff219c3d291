"""Request bodies to Tenant documents (as the CLI reads files), and the diff of two documents."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.admin.documents import (
    Change,
    InvalidDocumentError,
    MalformedDocumentError,
    diff_documents,
    load_json,
    parse_document,
    read_tenant_document,
    unified_diff,
    validate_sources,
)
from services.common.tenant_config import ConfigFileError, ConfigInvalidError, parse_config_sources, to_document
from services.common.tenant_config.policy import SalesforcePolicy

pytestmark = pytest.mark.unit

SAMPLE = (Path(__file__).resolve().parents[3] / "deploy" / "examples" / "tenant-acme.yaml").read_text()
# What a deployment gets with no policy variable set.
POLICY = SalesforcePolicy()


def cli_problems(text: str, policy: SalesforcePolicy = POLICY) -> list[str]:
    """What `duplex config validate` says about ``text`` (its lines, without the file name)."""
    with pytest.raises(ConfigFileError) as raised:
        validate_sources([("f", text)], policy)
    return [line.removeprefix("f: ") for line in raised.value.problems]


def api_problems(text: str, policy: SalesforcePolicy = POLICY) -> list[str]:
    """What the API says about ``text`` as a body, as ``field: message`` lines."""
    with pytest.raises(InvalidDocumentError) as raised:
        read_tenant_document(text.encode(), as_yaml=True, policy=policy)
    return [f"{i.where}: {i.message}" for i in raised.value.issues]


def with_secret_env(text: str, name: str) -> str:
    """``text`` with its client secret read from the variable ``name``."""
    return re.sub(r"clientSecret: \{secretRef: \{env: \w+\}\}", f"clientSecret: {{secretRef: {{env: {name}}}}}", text)


OFF_THE_LIST = "https://login.salesforce.com.evil.io"
LOGIN_REFUSED = f"spec.salesforce.loginUrl: {POLICY.url_rule(OFF_THE_LIST)}"
SECRET_REFUSED = f"spec.salesforce.auth.clientSecret.secretRef.env: {POLICY.env_rule('POSTGRES_DSN')}"


def test_yaml_and_json_give_the_same_configuration() -> None:
    from_yaml = read_tenant_document(SAMPLE.encode(), as_yaml=True, policy=POLICY)
    from_json = read_tenant_document(json.dumps(to_document(from_yaml)).encode(), as_yaml=False, policy=POLICY)
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
    assert api_problems(text) == cli_problems(text)
    assert len(cli_problems(text)) == 1
    # The CLI's own reading of files, without the policy, agrees on everything but the policy.
    with pytest.raises(ConfigFileError) as raised:
        parse_config_sources([("f", text)])
    assert raised.value.problems == ("f: " + cli_problems(text)[0],)


def test_yaml_as_strict_as_the_cli() -> None:
    for text in ["kind: [Tenant\n", "a: 1\na: 2\n"]:
        with pytest.raises(MalformedDocumentError) as raised:
            read_tenant_document(text.encode(), as_yaml=True, policy=POLICY)
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
        read_tenant_document(raw, as_yaml=as_yaml, policy=POLICY)
    assert str(raised.value) == message


def test_the_policy_refuses_secrets_and_hosts_by_field() -> None:
    text = with_secret_env(SAMPLE, "POSTGRES_DSN").replace(
        "loginUrl: https://login.salesforce.com\n", f"loginUrl: {OFF_THE_LIST}\n", 1
    )
    assert api_problems(text) == [LOGIN_REFUSED, SECRET_REFUSED]
    assert cli_problems(text) == api_problems(text)
    with pytest.raises(InvalidDocumentError) as raised:
        read_tenant_document(text.encode(), as_yaml=True, policy=POLICY)
    assert str(raised.value) == "the document has 2 problems; see errors"
    # The same document under a policy that allows both.
    lenient = SalesforcePolicy(secret_env_prefix="", extra_hosts=("*.evil.io",))
    assert read_tenant_document(text.encode(), as_yaml=True, policy=lenient).tenant_id == "acme"
    assert [d.config.tenant_id for d in validate_sources([("f", text)], lenient)] == ["acme"]


def test_refusals_come_beside_the_other_problems() -> None:
    secret = with_secret_env(SAMPLE, "POSTGRES_DSN")
    # A cross-field problem: the refusal is listed after it, in one answer.
    cross_field = secret.replace("mode: oauth_pkce", "mode: client_credentials", 1)
    assert api_problems(cross_field) == [
        "spec.salesforce.auth.scopes: only allowed when mode is oauth_pkce (mode is client_credentials)",
        SECRET_REFUSED,
    ]
    assert cli_problems(cross_field) == api_problems(cross_field)
    # A structural one: the document has no shape to judge yet.
    structural = secret.replace("dailyApiCap: 5000", "dailyApiCap: many", 1)
    assert api_problems(structural) == ["spec.salesforce.dailyApiCap: must be a whole number (got 'many')"]
    assert cli_problems(structural) == api_problems(structural)


def test_parse_document_is_the_one_check() -> None:
    document = yaml.safe_load(with_secret_env(SAMPLE, "VAULT_KEYS"))
    with pytest.raises(ConfigInvalidError) as raised:
        parse_document(document, POLICY)
    assert [i.where for i in raised.value.issues] == ["spec.salesforce.auth.clientSecret.secretRef.env"]
    assert parse_document(document, SalesforcePolicy(secret_env_prefix="VAULT_")).tenant_id == "acme"


def test_the_cli_names_the_file_and_document_of_each_refusal() -> None:
    good = SAMPLE.replace("name: acme\n", "name: good\n", 1)
    bad = with_secret_env(SAMPLE, "POSTGRES_DSN").replace("name: acme\n", "name: bad\n", 1)
    broken = SAMPLE.replace("conflictPolicy: app_wins", "conflictPolicy: app-wins", 1)
    with pytest.raises(ConfigFileError) as raised:
        validate_sources([("one.yaml", good + "---\n" + bad), ("two.yaml", broken), ("three.yaml", "a: [")], POLICY)
    assert raised.value.problems == (
        "two.yaml: spec.objects[0].fields[3].conflictPolicy: must be one of app_wins, crm_wins, newest_wins, "
        "app_unless_blank, crm_unless_blank (got 'app-wins')",
        "three.yaml: line 1, column 5: invalid YAML: expected the node content, but found '<stream end>'",
        f"one.yaml: document 2: {SECRET_REFUSED}",
    )
    loaded = validate_sources([("one.yaml", good)], POLICY)
    assert [(d.source, d.index, d.config.tenant_id) for d in loaded] == [("one.yaml", 1, "good")]


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
