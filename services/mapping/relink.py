"""Links that Salesforce re-points: a converted Lead's link follows the record the Lead became, and
a merge loser's link moves to the winner or retires. Neither maps a field; what was done is only
told to the sync log."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.change import Change, Side
from services.common.tenant_config import ObjectPair
from services.mapping.storage import BatchLinks


@dataclass(frozen=True)
class Relinked:
    """What a conversion or a merge did to links, as the sync log records it."""

    event: str
    link_id: str | None
    message: str


async def convert(
    links: BatchLinks, pair: ObjectPair, change: Change, target: tuple[ObjectPair, str] | None
) -> Relinked:
    """Move a converted Lead's link to ``target``, the (pair, record) it became, if any."""
    lead = await links.find(change.tenant_id, pair.name, Side.CRM, change.record_id)
    if lead is None:
        return Relinked("lead.converted", None, "the lead has no link (never synced, or already re-pointed)")
    if target is None:
        # The converted records link on their own when their changes arrive.
        message = f"no pair of the converted records is on app object {pair.app.object}: the lead's link stays"
        return Relinked("lead.converted", lead.link_id, message)
    target_pair, record_id = target
    existing = await links.find(change.tenant_id, target_pair.name, Side.CRM, record_id)
    if existing is not None and existing.link_id != lead.link_id:
        if existing.app_record_id is not None:
            # Both already synced to different app records: keep the contact's link, stop the lead's.
            await links.retire(lead, existing.link_id)
            return Relinked("lead.converted", lead.link_id, f"converted into linked {record_id}")
        # The converted record's own create arrived first and founded a link of its own: the
        # lead's link (which has the app record) absorbs it.
        await links.retire(existing, lead.link_id)
    await links.repoint(lead, target_pair.name, record_id)
    return Relinked("link.repointed", lead.link_id, f"lead converted into {target_pair.name} {record_id}")


async def merge(links: BatchLinks, pair: ObjectPair, change: Change, winner: str) -> Relinked | None:
    """Move or retire the link of a merge loser (``change`` is its DELETE); None when it had none."""
    loser = await links.find(change.tenant_id, pair.name, Side.CRM, change.record_id)
    if loser is None:
        return None
    winner_link = await links.find(change.tenant_id, pair.name, Side.CRM, winner)
    if winner_link is None:
        await links.repoint(loser, pair.name, winner)
        message = f"merged into {winner}: link moved to the winner"
    elif winner_link.app_record_id is None and loser.app_record_id is not None:
        # The winner's UPDATE (another key, so another partition) arrived first and founded a
        # link with no app record: the loser's link, which has one, absorbs it.
        await links.retire(winner_link, loser.link_id)
        await links.repoint(loser, pair.name, winner)
        message = f"merged into {winner}, linked only since the merge as {winner_link.link_id}: link moved"
    else:
        await links.retire(loser, winner_link.link_id)
        message = f"merged into {winner}, already linked as {winner_link.link_id}: link retired, app record kept"
    return Relinked("link.merged", loser.link_id, message)
