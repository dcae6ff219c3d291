"""Which configured objects are streamed and which are polled, once the org's CDC selection is known."""

from __future__ import annotations

import pytest

from services.cdc_ingest.selection import Serving, checks_selection, selection_refused, serving
from services.common.schema_refresh import SELECTED_ENTITIES_QUERY, change_event_name

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("entity", "event"),
    [
        ("Account", "AccountChangeEvent"),
        ("Case", "CaseChangeEvent"),
        ("Partner_Tier__c", "Partner_Tier__ChangeEvent"),
        ("Employee__c", "Employee__ChangeEvent"),
        # A managed package's object keeps its namespace; only the __c suffix is replaced.
        ("acme__Invoice__c", "acme__Invoice__ChangeEvent"),
        ("Lower__C", "Lower__ChangeEvent"),
    ],
)
def test_change_event_names(entity: str, event: str) -> None:
    assert change_event_name(entity) == event


ALL = ("AccountChangeEvent", "ContactChangeEvent", "CaseChangeEvent", "Partner_Tier__ChangeEvent")


@pytest.mark.parametrize(
    ("streamed", "polled", "selected", "expected"),
    [
        # Everything selected: nothing moves.
        (["Account", "Case"], [], ALL, Serving(("Account", "Case"), (), ())),
        # Case's change events are not selected: it is polled, after the configured polled objects.
        (
            ["Account", "Case"],
            ["Lead"],
            ("AccountChangeEvent",),
            Serving(("Account",), ("Lead", "Case"), ("Case",)),
        ),
        # A custom object is found by its __ChangeEvent name, not by <Name>ChangeEvent.
        (
            ["Partner_Tier__c", "Account"],
            [],
            ("Partner_Tier__ChangeEvent",),
            Serving(("Partner_Tier__c",), ("Account",), ("Account",)),
        ),
        (
            ["Partner_Tier__c"],
            [],
            ("Partner_Tier__cChangeEvent",),
            Serving((), ("Partner_Tier__c",), ("Partner_Tier__c",)),
        ),
        # Nothing selected at all: every streamed object is polled.
        (["Account", "Contact"], [], (), Serving((), ("Account", "Contact"), ("Account", "Contact"))),
        # Names compare case-insensitively, as Salesforce API names do.
        (["account"], [], ("AccountChangeEvent",), Serving(("account",), (), ())),
        (["Account"], [], ("accountchangeevent",), Serving(("Account",), (), ())),
        # An object configured as polled stays polled even when selected, and is not reported.
        (["Account"], ["Case"], ALL, Serving(("Account",), ("Case",), ())),
        # The selection could not be read: the configuration stands.
        (["Account", "Case"], ["Lead"], None, Serving(("Account", "Case"), ("Lead",), ())),
        # Selections of objects the tenant does not sync change nothing.
        (["Contact"], [], ("ContactChangeEvent", "OpportunityChangeEvent"), Serving(("Contact",), (), ())),
    ],
)
def test_serving(streamed: list[str], polled: list[str], selected: tuple[str, ...] | None, expected: Serving) -> None:
    assert serving(streamed, polled, selected) == expected


@pytest.mark.parametrize(
    ("channel", "checked"),
    [
        ("/data/ChangeEvents", True),
        # A custom channel's members are not looked up (see the module docstring): configured behaviour.
        ("/data/SalesEvents__chn", False),
        ("/data/AccountChangeEvent", False),
    ],
)
def test_only_the_standard_channel_is_checked(channel: str, checked: bool) -> None:
    assert checks_selection(channel) is checked


@pytest.mark.parametrize(
    ("status", "code", "refused"),
    [
        (400, "INVALID_TYPE", True),  # no View Setup and Configuration: the object is invisible
        (403, "INSUFFICIENT_ACCESS", True),
        (403, "API_DISABLED_FOR_ORG", True),
        (404, "NOT_FOUND", True),
        (400, "MALFORMED_QUERY", True),
        # Out of API calls is not an answer about the selection: the worker fails and is retried.
        (403, "REQUEST_LIMIT_EXCEEDED", False),
        (401, "INVALID_SESSION_ID", False),
        (500, "UNKNOWN_EXCEPTION", False),
        (503, "SERVER_UNAVAILABLE", False),
    ],
)
def test_which_failures_leave_the_configuration_as_it_is(status: int, code: str, refused: bool) -> None:
    assert selection_refused(status, code) is refused


def test_the_query_reads_the_standard_channel_selection() -> None:
    assert SELECTED_ENTITIES_QUERY == (
        "SELECT SelectedEntity FROM PlatformEventChannelMember WHERE EventChannel = 'ChangeEvents'"
    )
