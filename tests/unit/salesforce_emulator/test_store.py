"""Record store semantics: writes, change tracking, atomicity, merge, lead conversion, persistence."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from services.salesforce_emulator.changes import CommittedTransaction
from services.salesforce_emulator.context import CallContext
from services.salesforce_emulator.errors import SalesforceError
from services.salesforce_emulator.faults import OrgFaults
from services.salesforce_emulator.schema import STANDARD_OBJECTS, FieldDef, ObjectDef, custom_object
from services.salesforce_emulator.store import MultipleMatchesError, RecordStore

pytestmark = pytest.mark.unit

ORG = "00D5g0000000001AAA"
USER = "0055g0000000001AAA"
EMPLOYEE = custom_object(
    "Employee__c",
    "a00",
    "Employee",
    [
        FieldDef("Ext__c", "string", "Ext", length=40, external_id=True, custom=True),
        FieldDef("Badge__c", "string", "Badge", length=20, unique=True, custom=True),
        FieldDef("Level__c", "int", "Level", precision=3, default_value=1, defaulted_on_create=True, custom=True),
        FieldDef(
            "Label__c",
            "string",
            "Label",
            length=100,
            calculated=True,
            custom=True,
            formula="UPPER(Name) & '-' & TEXT(Level__c)",
        ),
        FieldDef(
            "Account__c",
            "reference",
            "Account",
            length=18,
            reference_to=("Account",),
            relationship_name="Account__r",
            custom=True,
        ),
    ],
)
OBJECTS: dict[str, ObjectDef] = {o.name: o for o in (*STANDARD_OBJECTS, EMPLOYEE)}


@dataclass
class Sink:
    published: list[CommittedTransaction] = field(default_factory=list)

    def publish(self, transaction: CommittedTransaction) -> None:
        self.published.append(transaction)


@dataclass
class Env:
    store: RecordStore
    sink: Sink
    faults: OrgFaults
    clock: list[float]
    readonly: set[str]
    ctx: CallContext = field(default_factory=lambda: CallContext(ORG, USER, "62.0", client="duplex"))

    def create(self, obj: str, body: dict[str, Any]) -> str:
        with self.store.transaction(self.ctx) as txn:
            return txn.create(obj, body)

    def row(self, obj: str, record_id: str) -> dict[str, Any]:
        row = self.store.get(ORG, obj, record_id)
        assert row is not None
        return row


def make_env(path: str = ":memory:") -> Env:
    sink, faults, clock, readonly = Sink(), OrgFaults(), [1_714_564_800.0], set[str]()
    store = RecordStore(
        path,
        schema_for=lambda _org: OBJECTS,
        faults_for=lambda _org: faults,
        sink=sink,
        readonly_fields_for=lambda _org, _user: readonly,
        clock=lambda: clock[0],
    )
    return Env(store, sink, faults, clock, readonly)


@pytest.fixture
def env() -> Iterator[Env]:
    e = make_env()
    yield e
    e.store.close()


def test_create_sets_system_fields_defaults_autonumbers_and_formulas(env: Env) -> None:
    account = env.create("Account", {"Name": "Acme"})
    emp = env.create("employee__c", {"name": "ada", "Account__c": account[:15]})
    case = env.create("Case", {"Subject": "Help"})
    row = env.row("Employee__c", emp)
    assert emp.startswith("a005g")
    assert len(emp) == 18
    assert row["CreatedDate"] == row["LastModifiedDate"] == row["SystemModstamp"] == "2024-05-01T12:00:00.000+0000"
    assert row["CreatedById"] == row["LastModifiedById"] == row["OwnerId"] == USER
    assert row["IsDeleted"] is False
    assert row["Level__c"] == 1
    assert row["Label__c"] == "ADA-1"
    assert row["Account__c"] == account
    assert env.row("Case", case)["CaseNumber"] == "00001001"
    assert env.row("Case", case)["Status"] == "New"
    assert env.store.get(ORG, "Case", env.create("Case", {}))["CaseNumber"] == "00001002"  # type: ignore[index]


def test_person_name_and_opportunity_formula_are_computed_on_read(env: Env) -> None:
    contact = env.create("Contact", {"FirstName": "Ada", "LastName": "Lovelace"})
    assert env.row("Contact", contact)["Name"] == "Ada Lovelace"
    opp = env.create("Opportunity", {"Name": "O", "StageName": "Prospecting", "CloseDate": "2024-06-01"})
    assert env.row("Opportunity", opp)["IsClosed"] is False
    with env.store.transaction(env.ctx) as txn:
        txn.update("Opportunity", opp, {"StageName": "Closed Won"})
    assert env.row("Opportunity", opp)["IsClosed"] is True


def test_create_publishes_one_transaction_with_every_populated_field(env: Env) -> None:
    with env.store.transaction(env.ctx) as txn:
        a = txn.create("Account", {"Name": "A", "BillingCity": "Paris"})
        b = txn.create("Account", {"Name": "B"})
    assert len(env.sink.published) == 1
    t = env.sink.published[0]
    assert (t.org_id, t.commit_user, t.change_origin) == (ORG, USER, "com/salesforce/api/rest/62.0;client=duplex")
    assert t.commit_number == 1
    assert t.commit_timestamp_ms == 1_714_564_800_000
    assert [c.record_ids for c in t.changes] == [(a,), (b,)]
    assert all(c.change_type == "CREATE" and c.changed_fields == () for c in t.changes)
    assert t.changes[0].values["BillingCity"] == "Paris"
    assert t.changes[0].values["Name"] == "A"
    assert "Phone" not in t.changes[0].values


def test_update_reports_only_changed_and_nulled_fields(env: Env) -> None:
    a = env.create("Account", {"Name": "A", "Phone": "1", "Website": "w"})
    env.clock[0] += 1.5
    with env.store.transaction(env.ctx) as txn:
        txn.update("Account", a, {"Name": "A", "Phone": None, "Website": "x", "Industry": None})
    change = env.sink.published[-1].changes[0]
    assert change.change_type == "UPDATE"
    assert change.changed_fields == ("Phone", "Website", "LastModifiedDate")
    assert change.nulled_fields == ("Phone",)
    assert change.values == {"Phone": None, "Website": "x", "LastModifiedDate": "2024-05-01T12:00:01.500+0000"}
    row = env.row("Account", a)
    assert row["Phone"] is None
    assert row["SystemModstamp"] == "2024-05-01T12:00:01.500+0000"
    assert row["CreatedDate"] == "2024-05-01T12:00:00.000+0000"


def test_update_by_another_user_changes_last_modified_by(env: Env) -> None:
    a = env.create("Account", {"Name": "A"})
    other = CallContext(ORG, "0055g0000000002AAA", "62.0")
    with env.store.transaction(other) as txn:
        txn.update("Account", a, {"Name": "B"})
    change = env.sink.published[-1].changes[0]
    assert change.changed_fields == ("Name", "LastModifiedDate", "LastModifiedById")
    assert env.row("Account", a)["LastModifiedById"] == "0055g0000000002AAA"


def test_commit_numbers_are_monotonic_and_keys_unique(env: Env) -> None:
    for i in range(3):
        env.create("Account", {"Name": str(i)})
    numbers = [t.commit_number for t in env.sink.published]
    assert numbers == [1, 2, 3]
    assert len({t.transaction_key for t in env.sink.published}) == 3


def test_delete_and_undelete(env: Env) -> None:
    a = env.create("Account", {"Name": "A"})
    env.clock[0] += 60
    with env.store.transaction(env.ctx) as txn:
        txn.delete(a)
    assert env.sink.published[-1].changes[0].change_type == "DELETE"
    assert env.sink.published[-1].changes[0].values == {}
    assert [r["Id"] for r in env.store.rows(ORG, "Account")] == []
    assert [r["Id"] for r in env.store.rows(ORG, "Account", include_deleted=True)] == [a]
    assert env.row("Account", a)["IsDeleted"] is True
    assert env.store.deleted_records(ORG, "Account", 0, 2**62) == [(a, 1_714_564_860_000)]
    with pytest.raises(SalesforceError) as caught, env.store.transaction(env.ctx) as txn:
        txn.update("Account", a, {"Name": "x"})
    assert caught.value.error_code == "ENTITY_IS_DELETED"
    with env.store.transaction(env.ctx) as txn:
        txn.undelete(a)
    change = env.sink.published[-1].changes[0]
    assert change.change_type == "UNDELETE"
    assert change.values["Name"] == "A"
    assert env.row("Account", a)["IsDeleted"] is False
    with pytest.raises(SalesforceError) as caught, env.store.transaction(env.ctx) as txn:
        txn.undelete(a)
    assert caught.value.error_code == "UNDELETE_FAILED"


def test_hard_delete_erases_and_only_live_records_emit_a_change(env: Env) -> None:
    a, b = env.create("Account", {"Name": "A"}), env.create("Account", {"Name": "B"})
    with env.store.transaction(env.ctx) as txn:
        txn.delete(b)
    before = len(env.sink.published)
    with env.store.transaction(env.ctx) as txn:
        txn.hard_delete(a)
        txn.hard_delete(b)
    assert [c.record_ids for c in env.sink.published[before].changes] == [(a,)]
    assert env.store.get(ORG, "Account", a) is None
    assert env.store.get(ORG, "Account", b) is None


def test_error_rolls_back_the_whole_transaction_and_publishes_nothing(env: Env) -> None:
    def write_two() -> None:
        with env.store.transaction(env.ctx) as txn:
            txn.create("Account", {"Name": "kept?"})
            txn.create("Account", {})

    with pytest.raises(SalesforceError):
        write_two()
    assert list(env.store.rows(ORG, "Account", include_deleted=True)) == []
    assert env.sink.published == []


def test_failed_operation_writes_nothing_so_partial_success_is_safe(env: Env) -> None:
    with env.store.transaction(env.ctx) as txn:
        txn.create("Account", {"Name": "A"})
        with pytest.raises(SalesforceError):
            txn.create("Account", {"Phone": "1"})
        txn.create("Account", {"Name": "B"})
    assert [r["Name"] for r in env.store.rows(ORG, "Account")] == ["A", "B"]
    assert len(env.sink.published[0].changes) == 2


def test_savepoint_undoes_writes_and_changes(env: Env) -> None:
    with env.store.transaction(env.ctx) as txn:
        txn.create("Account", {"Name": "A"})

        def write_two() -> None:
            with txn.savepoint():
                txn.create("Account", {"Name": "B"})
                txn.create("Account", {})

        with pytest.raises(SalesforceError):
            write_two()
    assert [r["Name"] for r in env.store.rows(ORG, "Account")] == ["A"]
    assert len(env.sink.published[0].changes) == 1


REFERENCE_ERRORS = [
    ("missing record", "0015g00000000ZZ", "INVALID_CROSS_REFERENCE_KEY"),
    ("wrong object type", "0035g0000000001AAA", "INVALID_CROSS_REFERENCE_KEY"),
    ("malformed", "001-bad", "MALFORMED_ID"),
]


@pytest.mark.parametrize(("value", "code"), [r[1:] for r in REFERENCE_ERRORS], ids=[r[0] for r in REFERENCE_ERRORS])
def test_reference_checks(env: Env, value: str, code: str) -> None:
    with pytest.raises(SalesforceError) as caught:
        env.create("Contact", {"LastName": "L", "AccountId": value})
    assert caught.value.error_code == code
    assert caught.value.fields == ["AccountId"]


def test_reference_to_deleted_record_is_entity_is_deleted(env: Env) -> None:
    a = env.create("Account", {"Name": "A"})
    with env.store.transaction(env.ctx) as txn:
        txn.delete(a)
    with pytest.raises(SalesforceError) as caught:
        env.create("Contact", {"LastName": "L", "AccountId": a})
    assert caught.value.error_code == "ENTITY_IS_DELETED"


def test_owner_may_be_the_calling_user_without_a_user_record(env: Env) -> None:
    a = env.create("Account", {"Name": "A", "OwnerId": USER})
    assert env.row("Account", a)["OwnerId"] == USER


def test_unique_fields_reject_duplicates_and_external_ids_may_repeat(env: Env) -> None:
    first = env.create("Employee__c", {"Name": "a", "Badge__c": "B1", "Ext__c": "E"})
    with pytest.raises(SalesforceError) as caught:
        env.create("Employee__c", {"Name": "b", "Badge__c": "b1"})
    assert caught.value.error_code == "DUPLICATE_VALUE"
    assert caught.value.message == f"duplicate value found: Badge__c duplicates value on record with id: {first}"
    second = env.create("Employee__c", {"Name": "c", "Ext__c": "e"})
    assert env.store.find_ids(ORG, "Employee__c", "Ext__c", "E") == [first, second]


def test_upsert_creates_updates_and_refuses_ambiguity(env: Env) -> None:
    with env.store.transaction(env.ctx) as txn:
        rid, created = txn.upsert("Employee__c", "Ext__c", "X1", {"Name": "a"})
    assert created
    with env.store.transaction(env.ctx) as txn:
        again, created = txn.upsert("Employee__c", "ext__c", "x1", {"Name": "b"})
    assert (again, created) == (rid, False)
    assert env.row("Employee__c", rid)["Name"] == "b"
    assert env.row("Employee__c", rid)["Ext__c"] == "X1"
    env.create("Employee__c", {"Name": "dup", "Ext__c": "X1"})
    with pytest.raises(MultipleMatchesError) as caught, env.store.transaction(env.ctx) as txn:
        txn.upsert("Employee__c", "Ext__c", "X1", {"Name": "c"})
    assert caught.value.http_status == 300
    assert len(caught.value.record_ids) == 2
    with pytest.raises(SalesforceError) as not_ext, env.store.transaction(env.ctx) as txn:
        txn.upsert("Employee__c", "Name", "x", {})
    assert not_ext.value.error_code == "NOT_FOUND"


def test_lock_faults_fail_writes_with_unable_to_lock_row(env: Env) -> None:
    a = env.create("Account", {"Name": "A"})
    env.faults.lock_ratio = 1.0
    with pytest.raises(SalesforceError) as caught, env.store.transaction(env.ctx) as txn:
        txn.update("Account", a, {"Name": "B"})
    assert (caught.value.http_status, caught.value.error_code) == (400, "UNABLE_TO_LOCK_ROW")
    with pytest.raises(SalesforceError), env.store.transaction(env.ctx) as txn:
        txn.create("Account", {"Name": "B"})
    env.faults.lock_ratio = 0.0
    assert env.row("Account", a)["Name"] == "A"


def test_readonly_fields_for_the_calling_user(env: Env) -> None:
    a = env.create("Account", {"Name": "A"})
    env.readonly.add("Account.Phone")
    with pytest.raises(SalesforceError) as caught, env.store.transaction(env.ctx) as txn:
        txn.update("Account", a, {"Phone": "1"})
    assert caught.value.error_code == "INSUFFICIENT_ACCESS_OR_READONLY"


def test_merge_reparents_children_and_deletes_losers(env: Env) -> None:
    master = env.create("Account", {"Name": "Master"})
    loser = env.create("Account", {"Name": "Loser"})
    child = env.create("Contact", {"LastName": "C", "AccountId": loser})
    result = env.store.merge(env.ctx, "Account", master, [loser], {"Phone": "123"})
    assert result == {
        "id": master,
        "mergedRecordIds": [loser],
        "updatedRelatedIds": [child],
        "success": True,
        "errors": [],
    }
    t = env.sink.published[-1]
    assert [(c.entity, c.change_type, c.record_ids) for c in t.changes] == [
        ("Account", "UPDATE", (master,)),
        ("Contact", "UPDATE", (child,)),
        ("Account", "DELETE", (loser,)),
    ]
    assert env.row("Contact", child)["AccountId"] == master
    assert env.row("Account", loser)["IsDeleted"] is True
    assert env.row("Account", loser)["MasterRecordId"] == master
    assert env.row("Account", master)["Phone"] == "123"


def test_merge_refuses_bad_requests(env: Env) -> None:
    master = env.create("Account", {"Name": "M"})
    with pytest.raises(SalesforceError):
        env.store.merge(env.ctx, "Account", master, [master])
    with pytest.raises(SalesforceError):
        env.store.merge(env.ctx, "Opportunity", master, ["0065g0000000009AAA"])
    assert env.row("Account", master)["IsDeleted"] is False


def test_convert_lead(env: Env) -> None:
    lead = env.create(
        "Lead", {"FirstName": "Ada", "LastName": "L", "Company": "Acme", "Email": "a@x.io", "City": "Paris"}
    )
    result = env.store.convert_lead(env.ctx, lead, opportunity_name="Deal")
    account, contact, opp = result["accountId"], result["contactId"], result["opportunityId"]
    assert env.row("Account", account)["Name"] == "Acme"
    assert env.row("Account", account)["BillingCity"] == "Paris"
    assert env.row("Contact", contact)["AccountId"] == account
    assert env.row("Contact", contact)["Email"] == "a@x.io"
    assert env.row("Opportunity", opp)["Name"] == "Deal"
    lead_row = env.row("Lead", lead)
    assert lead_row["IsConverted"] is True
    assert lead_row["Status"] == "Closed - Converted"
    assert lead_row["ConvertedDate"] == "2024-05-01"
    assert (lead_row["ConvertedAccountId"], lead_row["ConvertedContactId"]) == (account, contact)
    kinds = [(c.entity, c.change_type) for c in env.sink.published[-1].changes]
    assert kinds == [("Account", "CREATE"), ("Contact", "CREATE"), ("Opportunity", "CREATE"), ("Lead", "UPDATE")]
    with pytest.raises(SalesforceError) as caught, env.store.transaction(env.ctx) as txn:
        txn.update("Lead", lead, {"Title": "x"})
    assert caught.value.error_code == "CANNOT_UPDATE_CONVERTED_LEAD"
    with pytest.raises(SalesforceError):
        env.store.convert_lead(env.ctx, lead)


def test_convert_lead_into_an_existing_account_without_opportunity(env: Env) -> None:
    account = env.create("Account", {"Name": "Existing"})
    lead = env.create("Lead", {"LastName": "L", "Company": "Acme"})
    result = env.store.convert_lead(env.ctx, lead, account_id=account, do_not_create_opportunity=True)
    assert result["accountId"] == account
    assert result["opportunityId"] is None
    assert len(list(env.store.rows(ORG, "Account"))) == 1


def test_sink_failure_does_not_undo_the_commit(env: Env) -> None:
    class BrokenSink:
        def publish(self, transaction: CommittedTransaction) -> None:
            raise RuntimeError("sink down")

    env.store._sink = BrokenSink()
    a = env.create("Account", {"Name": "A"})
    assert env.row("Account", a)["Name"] == "A"


def test_updated_ids_window(env: Env) -> None:
    a = env.create("Account", {"Name": "A"})
    env.clock[0] += 120
    b = env.create("Account", {"Name": "B"})
    start = 1_714_564_800_000
    assert env.store.updated_ids(ORG, "Account", start, start + 60_000) == [a]
    assert env.store.updated_ids(ORG, "Account", start, start + 180_000) == [a, b]


def test_file_store_survives_reopening_and_never_reuses_ids(tmp_path: Path) -> None:
    path = str(tmp_path / "org.db")
    first = make_env(path)
    a = first.create("Account", {"Name": "A"})
    b = first.create("Account", {"Name": "B"})
    with first.store.transaction(first.ctx) as txn:
        txn.hard_delete(b)
    first.store.close()
    second = make_env(path)
    assert second.row("Account", a)["Name"] == "A"
    c = second.create("Account", {"Name": "C"})
    assert c not in (a, b)
    assert second.create("Case", {})
    second.store.close()


def test_transactions_do_not_nest(env: Env) -> None:
    with pytest.raises(RuntimeError), env.store.transaction(env.ctx), env.store.transaction(env.ctx):
        pass
