"""``python -m examples.partners_app``: run the example app, or make changes as its users would."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Annotated, Any

import asyncpg
import typer

from examples.partners_app import app as partners

cli = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


def settings() -> partners.Settings:
    prefix = os.environ.get("KAFKA_TOPIC_PREFIX", "")
    tenant = os.environ.get("PARTNERS_APP_TENANT", "acme")
    return partners.Settings(
        dsn=os.environ["PARTNERS_APP_DSN"],
        bootstrap_servers=os.environ["KAFKA_BOOTSTRAP_SERVERS"],
        tenant_id=tenant,
        app_changes_topic=prefix + "duplex.app-changes.v1",
        app_updates_topic=prefix + "duplex.app-updates.v1",
        # Every app reads all of app-updates and keeps its tenant's: one consumer group per app.
        group_id=os.environ.get("PARTNERS_APP_GROUP_ID", f"partners-app-{tenant}"),
    )


async def _with_conn(work: Any) -> Any:
    conn = await asyncpg.connect(os.environ["PARTNERS_APP_DSN"])
    try:
        await partners.migrate(conn)
        return await work(conn)
    finally:
        await conn.close()


@cli.command()
def run() -> None:
    """Publish local changes to app-changes and apply app-updates, until Ctrl-C."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(partners.run(settings()))


@cli.command()
def seed(count: Annotated[int, typer.Option(min=1)] = 100, prefix: str = "Partner") -> None:
    """Create ``count`` partners."""

    async def work(conn: Any) -> None:
        for i in range(count):
            await partners.create_partner(conn, {"name": f"{prefix} {i:05d}", "status": "active"})

    asyncio.run(_with_conn(work))
    typer.echo(f"created {count} partners")


@cli.command()
def edit(record_id: str, assignments: list[str]) -> None:
    """Change text fields of one partner: ``edit p-123 name=Acme phone=555``."""
    values = dict(a.split("=", 1) for a in assignments)

    async def work(conn: Any) -> list[str]:
        return await partners.edit_partner(conn, record_id, values)

    typer.echo(f"changed {asyncio.run(_with_conn(work)) or 'nothing'}")


if __name__ == "__main__":
    cli()
