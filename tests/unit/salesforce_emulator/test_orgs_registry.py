"""Orgs: deterministic ids from the seed, persistence in SQLite, runtime schema changes."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from services.salesforce_emulator import ids
from services.salesforce_emulator.orgs import (
    ClientSpec,
    FieldSpec,
    ObjectSpec,
    OrgError,
    OrgRegistry,
    OrgRepository,
    OrgSpec,
    UserSpec,
)
from services.salesforce_emulator.seed import apply_seed, load_seed

pytestmark = pytest.mark.unit

SEED = Path(__file__).resolve().parents[3] / "deploy" / "emulator" / "seed.yaml"


def registry(path: str = ":memory:") -> OrgRegistry:
    return OrgRegistry(OrgRepository(sqlite3.connect(path, check_same_thread=False), threading.Lock()))


def small_org(alias: str = "tiny", username: str = "ann@tiny.example") -> OrgSpec:
    return OrgSpec(
        alias=alias,
        users=(UserSpec(username=username, password=SecretStr("pw-1"), readonly_fields=("Account.Phone",)),),
        clients=(ClientSpec(name="app", client_id=f"{alias}-client", client_secret=SecretStr("s")),),
    )


def test_the_same_seed_gives_the_same_ids_everywhere() -> None:
    first, second = registry(), registry()
    seed = load_seed(SEED)
    a, b = apply_seed(first, seed), apply_seed(second, seed)
    assert a.org_id == b.org_id
    assert [u.user_id for u in a.state.users] == [u.user_id for u in b.state.users]
    assert a.org_id.startswith("00D")
    assert len(a.org_id) == 18
    assert ids.is_valid(a.org_id)
    assert all(u.user_id.startswith("005") and ids.is_valid(u.user_id) for u in a.state.users)
    assert first.get("globex").org_id != a.org_id


def test_orgs_are_found_by_alias_and_by_15_or_18_character_id() -> None:
    orgs = registry()
    org = orgs.create(small_org())
    assert orgs.get("tiny") is org
    assert orgs.get(org.org_id) is org
    assert orgs.get(org.org_id[:15]) is org
    with pytest.raises(OrgError):
        orgs.get("nope")


def test_seeded_schema_has_custom_fields_objects_and_cdc_switches() -> None:
    orgs = registry()
    org = apply_seed(orgs, load_seed(SEED))
    objects = orgs.schema_for(org.org_id)
    duplex_id = objects["Account"].field("Duplex_Id__c")
    assert duplex_id is not None
    assert duplex_id.external_id
    assert duplex_id.unique
    assert duplex_id.custom
    formula = objects["Account"].field("Is_Key_Account__c")
    assert formula is not None
    assert formula.calculated
    assert not formula.createable
    assert not formula.updateable
    tier = objects["Partner_Tier__c"]
    assert tier.custom
    assert tier.key_prefix == "a00"
    account_ref = tier.field("Account__c")
    assert account_ref is not None
    assert account_ref.reference_to == ("Account",)
    assert objects["Case"].cdc_enabled is False
    assert objects["Contact"].cdc_enabled is True
    # The second org has only what its own seed says.
    assert "Partner_Tier__c" not in orgs.schema_for(orgs.get("globex").org_id)


def test_passwords_are_hashed_and_checked_with_or_without_security_token() -> None:
    orgs = registry()
    spec = small_org().model_copy(
        update={
            "users": (
                UserSpec(username="t@tiny.example", password=SecretStr("pw-1"), security_token=SecretStr("TOKEN")),
            )
        }
    )
    user = orgs.create(spec).default_user
    assert "pw-1" not in user.model_dump_json()
    assert user.password_matches("pw-1")
    assert user.password_matches("pw-1TOKEN")
    assert not user.password_matches("pw-1TOKEX")
    assert not user.password_matches("")


def test_orgs_survive_a_restart_with_the_same_data_file(tmp_path: Path) -> None:
    path = str(tmp_path / "emulator.db")
    first = registry(path)
    org = first.create(small_org())
    first.define_object(
        "tiny", "Widget__c", ObjectSpec(label="Widget", fields=(FieldSpec(name="Size__c", type="int"),))
    )
    again = registry(path)
    restored = again.get("tiny")
    assert restored.org_id == org.org_id
    assert restored.default_user.password_matches("pw-1")
    assert restored.objects["Widget__c"].field("Size__c") is not None
    # The seed creates what is missing and leaves an existing org alone.
    assert again.ensure(small_org()).org_id == org.org_id


def test_define_object_adds_fields_and_custom_objects_at_runtime() -> None:
    orgs = registry()
    org = orgs.create(small_org())
    seen: list[str] = []
    orgs.on_schema_change(seen.append)
    before = org.schema_generation
    contact = orgs.define_object(
        "tiny", "Contact", ObjectSpec(fields=(FieldSpec(name="Loyalty__c", type="double", readonly=True),))
    )
    loyalty = contact.field("Loyalty__c")
    assert loyalty is not None
    assert not loyalty.updateable
    first = orgs.define_object("tiny", "First__c", ObjectSpec())
    second = orgs.define_object("tiny", "Second__c", ObjectSpec(cdc_enabled=False))
    assert (first.key_prefix, second.key_prefix) == ("a00", "a01")
    assert second.cdc_enabled is False
    assert org.schema_generation > before
    assert seen == [org.org_id] * 3


@pytest.mark.parametrize(
    ("name", "spec"),
    [
        ("Widget", ObjectSpec()),  # neither standard nor custom
        ("Bad__c", ObjectSpec(fields=(FieldSpec(name="F__c", type="string", formula="(("),))),
    ],
)
def test_bad_object_specs_are_refused_and_change_nothing(name: str, spec: ObjectSpec) -> None:
    orgs = registry()
    org = orgs.create(small_org())
    before = dict(org.objects)
    with pytest.raises(OrgError):
        orgs.define_object("tiny", name, spec)
    assert org.objects == before
    assert name not in org.state.objects
    assert name not in org.state.key_prefixes


def test_custom_field_names_must_end_in_c() -> None:
    with pytest.raises(ValidationError):
        FieldSpec(name="Plain", type="string")


def test_usernames_and_client_ids_are_unique_across_orgs() -> None:
    orgs = registry()
    orgs.create(small_org())
    with pytest.raises(OrgError, match="taken"):
        orgs.create(small_org(alias="other"))  # same username
    with pytest.raises(OrgError, match="taken"):
        orgs.add_client("tiny", ClientSpec(name="x", client_id="tiny-client", client_secret=SecretStr("s")))


def test_read_only_fields_and_lookups_by_user_and_client() -> None:
    orgs = registry()
    org = orgs.create(small_org())
    user = org.default_user
    assert orgs.readonly_fields_for(org.org_id, user.user_id) == frozenset({"Account.Phone"})
    assert orgs.find_user("ANN@tiny.example") == (org, user)
    found = orgs.find_client("tiny-client")
    assert found is not None
    assert found[0] is org
    assert orgs.faults_for(org.org_id) is org.faults


def test_a_client_execution_user_must_belong_to_the_org() -> None:
    orgs = registry()
    orgs.create(small_org())
    with pytest.raises(OrgError, match="execution user"):
        orgs.add_client(
            "tiny", ClientSpec(name="cc", client_id="cc", client_secret=SecretStr("s"), execution_user="ghost@x")
        )
