"""Which configured objects the org sends change events for, and so which are streamed or polled.

Salesforce reports nothing when an object is not selected for Change Data Capture: Subscribe to
``/data/ChangeEvents`` succeeds and the object's changes simply never arrive. The selection is
readable through the Tooling API, which is what this module interprets. Documented facts relied on:

* PlatformEventChannelMember "represents an entity selected for Change Data Capture notifications
  on a standard or custom channel"; the standard channel's selections are the ones made on the
  Change Data Capture page in Setup, and ``SelectedEntity`` holds the change event's name:
  ``AccountChangeEvent``, ``MyObject__ChangeEvent`` for ``MyObject__c``
  (https://developer.salesforce.com/docs/platform/change-data-capture/guide/cdc-object-selections-metadata.md,
  https://developer.salesforce.com/docs/atlas.en-us.api_meta.meta/api_meta/meta_platformeventchannelmember.htm).
* ``EventChannel`` names the channel, ``ChangeEvents`` for the standard one (Metadata API page
  above). The documentation queries ``Id, DeveloperName, EventChannel, SelectedEntity`` at
  ``/services/data/vXX.X/tooling/query?q=``
  (https://developer.salesforce.com/docs/platform/platform-events/guide/platform-events-custom-channel-list.html);
  filtering on ``EventChannel = 'ChangeEvents'`` is common third-party practice, not a documented example.
* Querying the object needs the "View Setup and Configuration" permission
  (https://developer.salesforce.com/docs/platform/api-tooling/references/tooling-objects/tooling-platformeventchannelmember.html).
  What a user without it gets back is not documented; third-party reports show
  ``INVALID_TYPE: sObject type '…' is not supported`` for Tooling objects hidden that way.

Only the standard channel is checked. Whether a custom channel's members carry the channel's name
or its id in ``EventChannel`` is not documented, and a wrong guess would move every object to
polling, so a tenant on a custom channel keeps its configuration.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from services.common.schema_refresh import change_event_name

STANDARD_CHANNEL = "/data/ChangeEvents"


def checks_selection(channel: str) -> bool:
    """Whether the selection is looked up for a tenant subscribed to ``channel`` (see the module docstring)."""
    return channel == STANDARD_CHANNEL


def selection_refused(http_status: int, error_code: str) -> bool:
    """Whether a failed selection query is an answer that cannot come (keep the configuration)
    rather than a fault to retry.

    A fixed query refused with 400, 403 or 404 fails the same way on every start (no permission,
    the object unknown to this org or API version); stopping the tenant for it would stop every
    object that does stream. Running out of API calls is 403 too, but says nothing about the
    selection: that fails the worker like any other call, and the supervisor retries later.
    """
    if error_code == "REQUEST_LIMIT_EXCEEDED":
        return False
    return http_status in (400, 403, 404)


@dataclass(frozen=True)
class Serving:
    """How a tenant's objects are read once the selection is known."""

    streamed: tuple[str, ...]
    polled: tuple[str, ...]
    # Configured for streaming, but their change events are not selected: polled instead.
    not_enabled: tuple[str, ...]


def serving(streamed: Sequence[str], polled: Sequence[str], selected: Iterable[str] | None) -> Serving:
    """Move every streamed object whose change event is not in ``selected`` to polling.

    ``selected`` is the ``SelectedEntity`` values, or None when they could not be read (the
    configuration then stands). Names compare case-insensitively, as Salesforce's API names do.
    """
    if selected is None:
        return Serving(tuple(streamed), tuple(polled), ())
    chosen = {name.lower() for name in selected}
    missing = tuple(entity for entity in streamed if change_event_name(entity).lower() not in chosen)
    return Serving(tuple(e for e in streamed if e not in missing), (*polled, *missing), missing)


@dataclass
class Objects:
    """A tenant's objects as its worker serves them, shared by the worker's parts: the selection
    check at start may move streamed objects to polling, and every part then sees them moved."""

    streamed: list[str]
    polled: list[str]

    @property
    def every(self) -> list[str]:
        return [*self.streamed, *self.polled]
