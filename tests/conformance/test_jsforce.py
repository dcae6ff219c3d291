"""jsforce (Node.js, unchanged, pinned by tests/conformance/node/package-lock.json) against the
emulator process: SOAP, OAuth password, web-server with jsforce's own PKCE and refresh logins, CRUD,
upsert, describe and describe-global, query paging, sObject Collections, errors, Bulk API 2.0
ingest and query, getUpdated/getDeleted and logout.

Each test runs one scenario of ``node/jsforce_scenarios.js`` in its own ``node`` process and asserts
on the JSON it prints. The scenarios run in an org of their own, so expiring its sessions (the
refresh scenario) touches no other test. jsforce is installed by ``make node-conformance``, which
``make test`` runs first.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from devstack.emulator import EmulatorProcess

pytestmark = [pytest.mark.conformance, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "conformance" / "node" / "jsforce_scenarios.js"
NODE_MODULES = ROOT / ".cache" / "node-conformance" / "node_modules"
REDIRECT = "http://localhost:1717/OauthRedirect"
# jsforce's default API version: the one its most basic script uses.
JSFORCE_DEFAULT_VERSION = "50.0"
NO_OPERATION = "No operation available for request {urn:partner.soap.sforce.com}login"


class JsforceOrg:
    """The org the scenarios use, and how to run them against it."""

    def __init__(self, emulator: EmulatorProcess, org: dict[str, Any], tag: str) -> None:
        self.emulator = emulator
        self.org_id: str = org["org_id"]
        self.user_id: str = org["users"][0]["user_id"]
        self.username: str = org["users"][0]["username"]
        self.tag = tag
        self.config = {
            "instanceUrl": emulator.instance_url,
            "username": self.username,
            "password": "jsforce-password",
            "clientId": "jsforce-client",
            "clientSecret": "jsforce-secret",
            "publicClientId": "jsforce-public",
            "redirectUri": REDIRECT,
            "adminToken": emulator.info["admin_token"],
            "orgId": self.org_id,
            "tag": tag,
            "latestVersion": emulator.info["api_version"],
        }

    def run(self, scenario: str) -> dict[str, Any]:
        node = shutil.which("node")
        if node is None or not (NODE_MODULES / "jsforce" / "package.json").is_file():
            pytest.fail("jsforce is not installed: run `make node-conformance` (`make test` does it first)")
        # No proxies: everything these scenarios reach is on 127.0.0.1.
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env |= {
            "NODE_PATH": str(NODE_MODULES),
            "NODE_EXTRA_CA_CERTS": self.emulator.ca_cert,
            "JSFORCE_CONFORMANCE": json.dumps(self.config),
        }
        done = subprocess.run(
            [node, str(SCRIPT), scenario], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False
        )
        lines = [line for line in done.stdout.splitlines() if line.startswith(("RESULT ", "FAILED "))]
        if done.returncode != 0 or not lines or not lines[-1].startswith("RESULT "):
            pytest.fail(f"jsforce scenario {scenario} failed:\n{done.stdout}\n{done.stderr}")
        result: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
        return result


@pytest.fixture(scope="module")
def jsforce_org(emulator: EmulatorProcess) -> JsforceOrg:
    alias = f"jsforce-{uuid.uuid4().hex[:8]}"
    spec = {
        "alias": alias,
        "name": "jsforce conformance",
        "users": [{"username": f"admin@{alias}.example", "password": "jsforce-password"}],
        "clients": [
            # A confidential app for the username-password flow.
            {
                "name": "confidential",
                "client_id": "jsforce-client",
                "client_secret": "jsforce-secret",
                "redirect_uris": [REDIRECT],
                "pkce_required": False,
            },
            # A public app (no secret at the token endpoint): the web-server flow with PKCE, then refresh.
            {
                "name": "public",
                "client_id": "jsforce-public",
                "client_secret": "never-sent",
                "redirect_uris": [REDIRECT],
            },
        ],
        "objects": {
            "Account": {
                "fields": [
                    {"name": "Duplex_Id__c", "type": "string", "length": 80, "external_id": True, "unique": True}
                ]
            }
        },
    }
    org = emulator.admin("POST", "/orgs", spec).json()
    return JsforceOrg(emulator, org, f"js{uuid.uuid4().hex[:8]}")


def test_soap_login_at_jsforces_default_version_then_soap_calls_and_logout(jsforce_org: JsforceOrg) -> None:
    result = jsforce_org.run("soap-login")
    assert result["version"] == JSFORCE_DEFAULT_VERSION
    assert (result["userId"], result["orgId"]) == (jsforce_org.user_id, jsforce_org.org_id)
    assert result["identityUsername"] == jsforce_org.username
    assert isinstance(result["totalSize"], int)
    assert result["soapUserName"] == jsforce_org.username
    stamp = datetime.fromisoformat(result["serverTimestamp"].replace("Z", "+00:00"))
    assert abs(stamp - datetime.now(UTC)) < timedelta(minutes=5)
    # Logout ends the session on the server, not only in the client.
    assert result["accessTokenAfterLogout"] is None
    assert result["afterLogout"]["errorCode"] == "INVALID_SESSION_ID"
    # Salesforce has no login() from API version 65.0 on.
    assert result["loginAt65"]["message"].startswith(NO_OPERATION)


def test_oauth_password_login_at_the_default_and_the_latest_version(jsforce_org: JsforceOrg) -> None:
    result = jsforce_org.run("oauth-password")
    latest = jsforce_org.config["latestVersion"]
    assert (result["version"], result["latestVersion"]) == (JSFORCE_DEFAULT_VERSION, latest)
    assert (result["userId"], result["orgId"]) == (jsforce_org.user_id, jsforce_org.org_id)
    assert result["instanceUrl"] == jsforce_org.emulator.instance_url
    # Records come back in the version each connection asked for.
    record = result["createdId"]
    assert result["recordUrl"] == f"/services/data/v{JSFORCE_DEFAULT_VERSION}/sobjects/Account/{record}"
    assert result["latestRecordUrl"] == f"/services/data/v{latest}/sobjects/Account/{record}"
    # jsforce read Sforce-Limit-Info, and /limits agrees with it.
    usage = result["apiUsage"]
    assert usage is not None
    assert usage["limit"] == result["dailyApiRequests"]["Max"]
    assert 0 < usage["used"] <= usage["limit"]
    # Logout revoked the token at Salesforce, not only in the client.
    assert result["accessTokenAfterLogout"] is None
    assert result["afterLogout"]["errorCode"] == "INVALID_SESSION_ID"
    assert result["badPassword"]["errorCode"] == "invalid_grant"


def test_web_server_flow_with_jsforces_own_pkce(jsforce_org: JsforceOrg) -> None:
    result = jsforce_org.run("web-server")
    # base64url of 128 random bytes: longer than RFC 7636's 128 characters, as Salesforce allows.
    assert result["verifierLength"] == 171
    assert result["state"] == "jsforce-state"
    assert (result["userId"], result["orgId"]) == (jsforce_org.user_id, jsforce_org.org_id)
    assert result["hasRefreshToken"] is True
    assert result["replayedCode"]["errorCode"] == "invalid_grant"
    assert result["wrongVerifier"]["errorCode"] in ("invalid_grant", "invalid_request")


def test_a_restored_session_finds_its_identity_and_refreshes_itself(jsforce_org: JsforceOrg) -> None:
    result = jsforce_org.run("refresh")
    # Without a login, jsforce reads the identity URL from the version's resources.
    assert (result["identityUserId"], result["identityOrgId"]) == (jsforce_org.user_id, jsforce_org.org_id)
    assert result["expired"] >= 1
    assert result["refreshed"] is True
    assert result["totalSize"] >= 0
    assert result["explicitHasAccessToken"] is True
    assert result["explicitInstanceUrl"] == jsforce_org.emulator.instance_url
    assert result["badRefresh"]["errorCode"] == "invalid_grant"


def test_crud_upsert_and_describe(jsforce_org: JsforceOrg) -> None:
    result = jsforce_org.run("crud")
    created = result["created"]
    assert created["success"] is True
    assert created["id"].startswith("001")
    assert len(created["id"]) == 18
    assert (result["readName"], result["readCity"], result["rereadCity"]) == (
        f"{jsforce_org.tag} crud",
        "Lyon",
        "Nantes",
    )
    assert result["destroyed"]["success"] is True
    assert result["afterDestroy"]["errorCode"] == "NOT_FOUND"
    assert result["inserted"]["success"] is True
    assert result["updated"]["success"] is True
    assert result["updated"]["id"] == result["inserted"]["id"]
    assert result["upsertedName"] == f"{jsforce_org.tag} upserted"
    assert (result["describeName"], result["describeKeyPrefix"]) == ("Account", "001")
    assert {"Id", "Name", "BillingCity", "Duplex_Id__c"} <= set(result["describeFields"])
    assert result["externalId"] == ["Duplex_Id__c"]
    assert {"Account", "Contact", "Lead"} <= set(result["globalNames"])
    assert result["maxBatchSize"] == 200


def test_collections(jsforce_org: JsforceOrg) -> None:
    result = jsforce_org.run("collections")
    assert [r["success"] for r in result["created"]] == [True, True, True]
    assert [r["success"] for r in result["updated"]] == [True, True, True]
    tag = jsforce_org.tag
    assert result["read"] == [{"Name": f"{tag} collection {n}", "Phone": f"555-000{n - 1}"} for n in (1, 2, 3)]
    ok, bad = result["mixed"]
    assert ok["success"] is True
    assert bad["success"] is False
    assert bad["errors"][0]["statusCode"] == "REQUIRED_FIELD_MISSING"
    # allOrNone: every item fails, the valid one rolled back, and nothing was written.
    assert [(r["success"], r["errors"][0]["statusCode"]) for r in result["rolledBack"]] == [
        (False, "ALL_OR_NONE_OPERATION_ROLLED_BACK"),
        (False, "REQUIRED_FIELD_MISSING"),
    ]
    assert result["rolledBackLeft"] == 0
    assert [r["success"] for r in result["destroyed"]] == [True] * 4


@pytest.fixture(scope="module")
def bulk_loaded(jsforce_org: JsforceOrg) -> dict[str, Any]:
    """The Bulk API 2.0 scenario's result; its 2,050 records are the query-paging test's data."""
    return jsforce_org.run("bulk2")


def test_bulk_api_2_ingest_and_query(bulk_loaded: dict[str, Any], jsforce_org: JsforceOrg) -> None:
    assert (bulk_loaded["successful"], bulk_loaded["failed"]) == (2050, 0)
    first = bulk_loaded["firstSuccess"]
    assert first["sf__Created"] == "true"
    assert first["sf__Id"].startswith("001")
    assert bulk_loaded["failingSuccessful"] == 1
    assert [e.split(":")[0] for e in bulk_loaded["failingErrors"]] == ["REQUIRED_FIELD_MISSING"]
    # 'bulk 0…' names: 0000-0999.
    assert bulk_loaded["queried"] == 1000
    assert bulk_loaded["queriedNames"] == [f"{jsforce_org.tag} bulk 0"]
    assert bulk_loaded["queriedIdsValid"] is True


def test_query_paging(bulk_loaded: dict[str, Any], jsforce_org: JsforceOrg) -> None:
    assert bulk_loaded["successful"] == 2050
    result = jsforce_org.run("query-paging")
    assert (result["firstDone"], result["firstSize"], result["totalSize"]) == (False, 2000, 2050)
    # jsforce hands back the locator as a full URL of its own making.
    assert f"/services/data/v{JSFORCE_DEFAULT_VERSION}/query/01g" in result["nextRecordsUrl"]
    assert (result["moreDone"], result["moreSize"]) == (True, 50)
    assert (result["allSize"], result["allDistinct"], result["foundSize"]) == (2050, 2050, 2050)
    assert result["queryAllTotal"] >= 2050


def test_errors_carry_salesforces_error_codes(jsforce_org: JsforceOrg) -> None:
    result = jsforce_org.run("errors")
    assert {name: error["errorCode"] for name, error in result.items()} == {
        "invalidField": "INVALID_FIELD",
        "malformedQuery": "MALFORMED_QUERY",
        "invalidType": "INVALID_TYPE",
        "unknownObject": "NOT_FOUND",
        "requiredField": "REQUIRED_FIELD_MISSING",
        "malformedId": "MALFORMED_ID",
        "notFound": "NOT_FOUND",
        "unknownResource": "NOT_FOUND",
        "retiredVersion": "GONE",
        "unreleasedVersion": "NOT_FOUND",
    }


def test_get_updated_and_get_deleted(jsforce_org: JsforceOrg) -> None:
    result = jsforce_org.run("replication")
    assert result["keptListed"] is True
    assert result["goneListedAsUpdated"] is False
    assert result["goneDeleted"] is True
    assert result["keptDeleted"] is False
    covered = datetime.fromisoformat(result["latestDateCovered"].replace("+0000", "+00:00"))
    assert (covered.second, covered.microsecond) == (0, 0)
    assert result["earliestDateAvailable"]
